"""The one door to MediaPipe (hands; whole-body pose next) and the gesture classifier built on it."""
