"""Conversation data: the formats people have (read and written), chat turns, the conversation
log chat writes, and scraped web pages turned into question/answer pairs."""
