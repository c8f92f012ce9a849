class DiagnosticsSummary: pass
def summary(*a, **k): raise NotImplementedError
