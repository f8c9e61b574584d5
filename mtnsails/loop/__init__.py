"""The retraining loop: review a chat log, evaluate models on reference answers, promote a better
model to the live directory, and watch a log to retrain round after round."""
