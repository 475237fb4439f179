"""What the pipeline is made of: the row, the stage contract, whose fault a failure is. The ground every room of
curation stands on, with its config."""
