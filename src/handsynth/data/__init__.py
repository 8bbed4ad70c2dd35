"""What both methods train on: HaGRID reading, the synthetic HaGRID-layout generator, captioning,
gesture-phrase rewriting, the dataset build and its quality check."""
