"""Fine-tuning as tasks of the shared loop: its config, the backbone a run starts from, classification
(the course's chapter 6) and instruction following (chapter 7), with their data."""
