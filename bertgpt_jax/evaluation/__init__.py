"""Task metrics as their benchmarks define them: GLUE (accuracy, F1, Matthews, Pearson/Spearman), the official
SQuAD v1.1/v2.0 evaluation, and entity-level precision/recall/F1 for tagging; NumPy on the host."""
