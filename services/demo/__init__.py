"""`rlmf demo`: the whole closed loop on one machine, ending with a report."""
