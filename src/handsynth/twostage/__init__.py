"""Two-stage pose-conditioned generation (Pelykh, Sincan, Bowden; seed 004), being built.

What will live here, one module per part of the paper:
- the two-stage dataset: whole-body poses, OpenPose condition images, finger heatmaps, hand masks
  and hand crops (§III, §IV-A);
- stage 1, the multi-task hand generator: a UNet with a widened conv_in and a mask head (§III-B), in
  `hand_model`, `hand_data`, `hand_trainer`, `hand_pipeline` and `hand_generate` (`handsynth handgen`);
- stage 2, the ControlNet + LoRA body outpainter and its canvas (§III-C);
- the sampler with sequential mask expansion (§III-D) and the pose -> image pipeline;
- the pose metrics (DAP, MPJPE) and the blending ablation (§IV-C to §IV-E).
"""
