"""What a study gives back: the Pareto front, the HTML report and the dashboard (export: :mod:`search.export`)."""
