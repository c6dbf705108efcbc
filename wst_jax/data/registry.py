def load_task(c): raise NotImplementedError
