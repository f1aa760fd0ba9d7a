"""What the run tells: the console and train.log, the SwanLab run, and the model card."""
