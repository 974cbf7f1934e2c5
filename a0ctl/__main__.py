from a0ctl.main import app

app(prog_name="a0ctl")
