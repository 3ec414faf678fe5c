"""Image classification, the sister built-in algorithm (issue 30): its hyperparameter table and
models so far. It joins the task registry (segcontainer.tasks) once its data, training and
answers are built; until then no job or model is a classification one."""
