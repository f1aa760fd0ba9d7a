"""The model: its shape and weights, document attention, the optimizer (Muon + AdamW), and sampling text from it."""
