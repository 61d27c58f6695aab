// Imported first by ./libfuse2-smoke.test.ts, before the cases it imports: every daemon that
// test process starts inherits SHEEP_FUSE and runs the libfuse 2 session.
process.env.SHEEP_FUSE = 'libfuse2'
