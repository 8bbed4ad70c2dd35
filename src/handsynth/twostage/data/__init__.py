"""The two-stage dataset (seed 004 §III-A, §IV-A): whole-body poses from MediaPipe Holistic (`extract`),
hand masks from SAM or the landmarks (`masks`), square hand crops (`crops`) with finger heatmaps
(`heatmaps`), OpenPose skeleton images (`skeleton`), the build of images.jsonl and hands.jsonl with its
report (`dataset`) and the contact sheet (`sheet`)."""
