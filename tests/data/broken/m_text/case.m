hello world
this is not a case
