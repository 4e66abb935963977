"""Study logic behind the notebooks: the functions a study notebook calls, unit-tested."""
