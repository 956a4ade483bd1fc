"""The report: the papermill runner and its profiles, figures, and helpers the notebooks call."""
