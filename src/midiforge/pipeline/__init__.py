"""The dataset job on Ray Data: inputs -> stages -> split/augment -> Parquet + report."""
