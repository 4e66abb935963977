"""The analysis behind the study notebooks: one module per study (sweeps, tables, findings
sentences), shared parts in ``common``. A notebook keeps its parameters, calls, plots and prose."""
