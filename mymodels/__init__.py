"""Your own models and data modules, outside project/: a worked example (csv_regression).

Any importable package beside the repository works the same way: name its classes in
conf/model/<name>.yaml and conf/dataset/<name>.yaml (`_target_`), and `invoke local` and
`invoke train` carry it along (project/aws/staging.py stages the packages the `_target_`s name).
"""
