"""Your own Python for experiments: configs point here with `_target_: experiments.<mod>.<Name>`."""
