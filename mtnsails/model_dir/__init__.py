"""The model directory's contract on disk: file names and `mtnsails.json`, the chat template,
the recorded answer lengths, the ONNX directory's metadata, and outputs replaced whole."""
