"""The textual-inversion study on the toy world (not part of the library): see README.md and REPORT.md."""
