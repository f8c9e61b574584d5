"""Running an exported model without torch: token generation on onnxruntime, answer text, question
matching, the chat engine (a loaded model) and the chat session over it."""
