"""The run: its output_dir and lock, the resume decision, checkpoints and their side files, final/, and the launch."""
