"""The controller of container targets: ONE session over 1..N members (controller), one
member's lifecycle (member), how a run ended and the one exit-code rule (ending), argument
mapping (args), event replay (events, merge), the run folder (runfolder), crashed-test
reports (crash); pool, routing, shards, attribution and hold as policies and layouts."""
