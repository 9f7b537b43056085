"""What a user runs: language-model pretraining, fine-tuning and evaluation, classifiers."""
