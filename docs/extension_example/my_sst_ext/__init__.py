"""An example of a user's own model and dataset for sst, kept outside the sst package."""
