// Placeholder until the native addon lands: keeps `npm ci` working.
console.log('dynamo-sglang: native addon not present yet');
