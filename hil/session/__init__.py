"""The controller of container targets: the run loop (controller), argument mapping (args),
event replay (events), the run folder (runfolder) and crashed-test resumes (crash)."""
