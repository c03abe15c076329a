"""The middle storey, Training: the DataModules and their sources, the LightningModules, the
Trainer's run, its reports and artifacts, checkpoints, and the entries that start it (`invoke
local`'s child, the container's launcher). With core/ and serving/ it is a job's code bundle
(project/aws/staging.py): it imports no platform and nothing of the Face."""
