"""The training machinery every trainer shares (`trainer`) and the Stable Diffusion parts they use
(`diffusion`). Hand1000's Stages II and III, the two-stage hand generator and the outpainter's LoRA
each subclass `trainer.Trainer` and add their loss and their data."""
