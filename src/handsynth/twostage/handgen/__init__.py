"""Stage 1, the multi-task hand generator (seed 004 §III-B): the SD UNet with a conv_in widened for the
finger heatmaps and the hand mask, and a mask head (`model`); its training data (`data`) and trainer
(`trainer`); the sampling pipeline (`pipeline`) and `handsynth handgen generate` (`generate`)."""
