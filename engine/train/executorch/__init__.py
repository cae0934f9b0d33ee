"""P-RGE training through ExecuTorch's runtime: the lowered training program and its runner."""
