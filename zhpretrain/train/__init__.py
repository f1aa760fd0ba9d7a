"""Training: the Trainer with its metrics, the callbacks that watch it, the one clock, the time budget, and speed (FLOPs, MFU)."""
