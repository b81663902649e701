"""`freshrec eval` and `freshrec tune`: the quality and timeliness evidence (eval, baselines,
replay, report) and the hyperparameter search (tune)."""
