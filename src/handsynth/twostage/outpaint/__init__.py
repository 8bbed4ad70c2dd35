"""Stage 2, the body outpainter (seed 004 §III-C, §III-D): the canvas that holds the generated hands
(`canvas`), the OpenPose ControlNet with its LoRA on the SD inpainting UNet (`models`), the LoRA trainer
(`trainer`), the blending rules with sequential mask expansion (`blending`), the DDIM sampler that blends
(`sampler`) and the outpainter that ties them together (`outpainter`)."""
