"""Where the pipeline's state lives: the single DynamoDB ``demand`` table (codec, keys, the
table, one module per entity) and the campaign store. No module outside this package
touches a DynamoDB client of the table or builds one of its keys."""
