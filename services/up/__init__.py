"""What `rlmf up` keeps in its state folder and how `rlmf status` and `rlmf down` read it."""
