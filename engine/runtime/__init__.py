"""Running a model for chat: llama.cpp (GGUF), transformers (+ PEFT) and ExecuTorch (.pte)."""
