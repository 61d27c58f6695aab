// dist/src/version.js -> the package root's package.json
export const VERSION: string = (require('../../package.json') as { version: string }).version
