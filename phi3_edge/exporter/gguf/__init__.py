"""GGUF files in: llama.cpp's container read with its own `gguf` package (no llama.cpp build).

    reader.py     the file: validated metadata and tensors, rows dequantized (or handed back as raw blocks)
    names.py      GGUF tensor names -> the Hugging Face names the graph asks for, Q/K row permutation undone
    spec.py       hyper-parameters from metadata -> the same frozen Phi3Spec config.json gives
    tokenizer.py  tokenizer.json + tokenizer_config.json written from the tokenizer metadata
    ollama.py     `ollama:<name>[:<tag>]` -> the model blob in an Ollama store
"""
