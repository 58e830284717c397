"""Pure decisions: what the cluster should look like, given what was observed."""
