"""The evaluation protocol of HyperHuman §5: test sets, metrics, the report."""
