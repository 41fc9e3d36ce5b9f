from edge.cli import edge as group

group(prog_name="python -m edge")
