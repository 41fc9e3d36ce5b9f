from cloud.cli import cloud as group

group(prog_name="python -m cloud")
