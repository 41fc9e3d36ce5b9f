from simulator.cli import sim as group

group(prog_name="python -m simulator")
