"""ifkit's plots and figures; ``ifkit.viz.palette`` holds every colour and display order."""
