"""End-to-end training recipes: each one command that builds data, trains and exports."""
