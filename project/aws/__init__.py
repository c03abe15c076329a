"""The SageMaker side: AWS sessions and errors, S3 transfers, images, jobs and the workflow behind the tasks.

Nothing here is imported by `tasks.py` at load time, and no module creates AWS clients on import.
"""
