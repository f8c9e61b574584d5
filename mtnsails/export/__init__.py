"""Export: a trained model to an ONNX directory (fp32, int8, int4), with the graph rewrites that
make CPU decoding cheaper and a check that the export answers as the model does; and a GGUF file
with an Ollama Modelfile for llama.cpp, Ollama and LM Studio (gguf)."""
